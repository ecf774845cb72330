package main

import (
	"context"
	"errors"
	"io"
)

func runSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("submit: not built yet")
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("demo: not built yet")
}
