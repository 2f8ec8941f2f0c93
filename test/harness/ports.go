package harness

import (
	"io"
	"net"
	"strconv"

	"github.com/layermesh/layermesh/internal/testports"
)

// reserveNodePort reserves a port for node i on host: free for TCP, and for UDP too
// when udp is set (memberlist needs both on one number). Inside a network the check
// binds in node i's namespace.
func (c *Cluster) reserveNodePort(i int, host string, udp bool) (int, error) {
	return testports.Reserve(c.t, func(port int) error {
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := c.listen(i, "tcp", addr)
		if err != nil {
			return err
		}
		defer l.Close()
		if !udp {
			return nil
		}
		u, err := c.listen(i, "udp", addr)
		if err != nil {
			return err
		}
		return u.Close()
	})
}

// listen binds addr for a moment, inside node i's namespace when there is a network.
func (c *Cluster) listen(i int, network, addr string) (io.Closer, error) {
	nw := c.opts.Network
	switch {
	case network == "tcp" && nw != nil:
		return nw.Listen(i, network, addr)
	case network == "tcp":
		return net.Listen(network, addr)
	case nw != nil:
		return nw.ListenPacket(i, network, addr)
	default:
		return net.ListenPacket(network, addr)
	}
}
