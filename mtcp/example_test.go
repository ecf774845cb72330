package mtcp_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"hafe.dev/hafe/mtcp"
)

// A server application that counts the bytes it has read, exports that
// count as its state after every read, and answers each read with the
// running count. On a migrated connection it starts from the imported
// count, so its answers continue exactly.
func serveCounter(c *mtcp.Conn) {
	defer c.Close()
	var n uint64
	if st, ok := c.ImportState(); ok {
		n = binary.BigEndian.Uint64(st)
	}
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
		n++
		if _, err := fmt.Fprintf(c, "%d ", n); err != nil {
			return
		}
		if err := c.ExportState(binary.BigEndian.AppendUint64(nil, n)); err != nil {
			return
		}
	}
}

func Example() {
	key := []byte("a cluster key shared by servers")
	var addrs []string
	var raws []net.Listener
	for range 2 {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		raws = append(raws, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, raw := range raws {
		l := mtcp.NewListener(raw, mtcp.ListenConfig{Servers: addrs, ClusterKey: key})
		defer l.Close()
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				go serveCounter(c)
			}
		}()
	}

	d := &mtcp.Dialer{Servers: addrs}
	c, err := d.DialMTCP(context.Background(), addrs[0])
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ask := func() string {
		c.Write([]byte("?"))
		b := make([]byte, 2)
		io.ReadFull(c, b)
		return string(b)
	}
	fmt.Print(ask(), ask())
	if err := c.Migrate(context.Background(), addrs[1]); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(ask(), ask())
	fmt.Println("on the second server:", c.Server() == addrs[1])
	// Output: 1 2 3 4 on the second server: true
}
