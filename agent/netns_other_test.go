//go:build !linux

package agent

import (
	"errors"
	"net"
)

func dialInNetns(netns, addr string) (net.Conn, error) {
	return nil, errors.New("network namespaces need Linux")
}
