package simnet_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"hafe.dev/hafe/mtcp/simnet"
)

func Example() {
	n := simnet.New(simnet.Config{Seed: 1})
	defer n.Close()
	client, _ := n.AddHost("client", netip.MustParseAddr("10.0.0.1"))
	server, _ := n.AddHost("server", netip.MustParseAddr("10.0.0.2"))
	n.Link(client, server, simnet.LinkConfig{Delay: 5 * time.Millisecond, Loss: 0.01, Bandwidth: 10 << 20})

	ln, _ := server.Listen("tcp", ":80")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello from " + c.LocalAddr().String()))
		c.Close()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", "server:80")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	msg, _ := io.ReadAll(c)
	fmt.Println(string(msg))

	// Later, e.g. to make the client's rate policy react:
	n.SetLinkOneWay(server, client, simnet.LinkConfig{Delay: 5 * time.Millisecond, Bandwidth: 100 << 10})
	n.Partition(client, server)
	n.Heal(client, server)
	// Output: hello from 10.0.0.2:80
}
