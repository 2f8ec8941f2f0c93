package harness

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func TestGarbageTCP(t *testing.T) {
	// A server that reads the junk, answers, and hangs up: the clean refusal.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, 4096)) // all of it: unread bytes would turn the close into a reset
			_, _ = c.Write([]byte("go away"))
			c.Close()
		}
	}()
	v, answer, err := GarbageTCP(context.Background(), nil, l.Addr().String(), 4096, 1, 5*time.Second)
	if err != nil || v != GarbageClosed || string(answer) != "go away" {
		t.Fatalf("closing server: %v %q %v", v, answer, err)
	}
	// An echo keeps talking and never hangs up: held open.
	v, _, err = GarbageTCP(context.Background(), nil, loopbackEcho(t), 4096, 1, 300*time.Millisecond)
	if err != nil || v != GarbageHeldOpen {
		t.Fatalf("echo server: %v %v, want held open", v, err)
	}
	if _, _, err := GarbageTCP(context.Background(), nil, deadAddr(t), 16, 1, time.Second); err == nil {
		t.Fatal("garbage to a dead address: no error")
	}
}
