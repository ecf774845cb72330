package client_test

import (
	"context"
	"fmt"
	"os"

	"hafe.dev/hafe/client"
)

// Submit a batch to two front-ends; if the first dies mid-batch the second
// resumes it, and each line is printed once.
func ExampleClient_Submit() {
	c, err := client.New(client.Config{FrontEnds: []string{"http://10.0.0.7:8080", "http://10.0.0.8:8080"}})
	if err != nil {
		panic(err)
	}
	defer c.CloseIdleConnections()
	body := []byte(`{"transactions":[{"template":"transfer","args":{"from":1,"to":2,"amount":10}}]}`)
	sum, err := c.Submit(context.Background(), client.Request{Body: body, OnLine: func(l client.Line) error {
		_, err := fmt.Fprintf(os.Stdout, "%s\n", l.Bytes)
		return err
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "incomplete; resume with key %s: %v\n", sum.IdempotencyKey, err)
		return
	}
	fmt.Fprintf(os.Stderr, "%d committed, %d aborted, served by %v\n", sum.Committed, sum.Aborted, sum.FrontEnds)
}
