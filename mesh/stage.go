package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// headerReadTimeout bounds reading a request header; a var so tests can shorten it.
var headerReadTimeout = 10 * time.Second

const (
	// stageReadTimeout bounds reading one request's tensors when it carries no
	// deadline, so a slow-loris peer cannot hold a handler slot forever.
	stageReadTimeout = 2 * time.Minute
)

// HandleStage installs the function that serves stage requests from peers. Until it is
// called, requests are answered with CodeNoHandler.
func (m *Mesh) HandleStage(h StageHandler) { m.stageHandler.Store(&h) }

func (m *Mesh) registerProtocols() {
	// The join handshake is deliberately registered on the bare host: it is the one
	// protocol a peer that is not admitted may speak.
	m.host.SetStreamHandler(ProtocolJoin, m.handleJoin)
	m.host.SetStreamHandler(ProtocolStage, m.handleStageStream)
}

// handleStageStream serves stage RPC over a libp2p stream, the path used when a peer's
// data listener is unknown.
func (m *Mesh) handleStageStream(s network.Stream) {
	p := s.Conn().RemotePeer()
	if !m.isAdmitted(p) {
		m.log.Warn("stage stream refused: peer not admitted", "peer", p.String())
		_ = writeErrorFrame(s, CodeNotAdmitted, "refused: not a member of this cluster")
		_ = s.Close()
		return
	}
	if err := m.serveStage(m.ctx, s, p); err != nil {
		m.log.Warn("stage stream cut off", "peer", p.String(), "err", err)
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// stageConn is what serveStage needs from a data connection or a libp2p stream.
type stageConn interface {
	io.ReadWriter
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
}

// serveStage reads one request, runs the handler, writes the response. A returned error
// means the connection is no longer usable (malformed frame, I/O failure).
func (m *Mesh) serveStage(ctx context.Context, c stageConn, p peer.ID) error {
	_ = c.SetDeadline(time.Now().Add(headerReadTimeout))
	req, err := readStageHeader(c)
	if err != nil {
		cutOff(c, err)
		return err
	}
	readBy := time.Now().Add(stageReadTimeout)
	if !req.Deadline.IsZero() && req.Deadline.Before(readBy) {
		readBy = req.Deadline
	}
	_ = c.SetDeadline(readBy)
	req.Tensors, err = tensor.Decode(c, tensor.Limits{MaxTensors: maxOutputs, MaxBytes: m.cfg.MaxTensorBytes})
	if err != nil {
		cutOff(c, err)
		return fmt.Errorf("%w: request %s: %w", ErrMalformedFrame, req.RequestID, err)
	}
	_ = c.SetDeadline(time.Time{})
	out, herr := m.runStage(ctx, c, req)
	if herr != nil {
		m.log.Debug("stage request failed", "peer", p.String(), "request", req.RequestID, "model", req.Model, "stage", req.Stage, "err", herr)
		return writeErrorFrame(c, codeOf(herr), herr.Error())
	}
	if _, err := c.Write([]byte{statusOK}); err != nil {
		return err
	}
	_, err = tensor.Encode(c, out)
	return err
}

// cutOff tells a peer why its frame is being dropped, with a fresh short deadline since
// the read that failed may have used up the old one. The caller then closes.
func cutOff(c stageConn, err error) {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_ = writeErrorFrame(c, CodeMalformed, err.Error())
}

// runStage runs the handler with a context that ends at the request's deadline or when
// the caller gives up. The caller sends nothing while it waits, and gives up by closing
// the connection (data conn) or resetting the stream (libp2p); a watcher reading the
// otherwise idle connection sees that and cancels. (The caller does not half-close a
// stream after its request: yamux reports no reset once a read side has seen EOF.)
func (m *Mesh) runStage(ctx context.Context, c stageConn, req *StageRequest) ([]tensor.Tensor, error) {
	if !req.Deadline.IsZero() && !time.Now().Before(req.Deadline) {
		return nil, fmt.Errorf("%w: arrived after its deadline", ErrDeadline)
	}
	hp := m.stageHandler.Load()
	if hp == nil {
		return nil, ErrNoHandler
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !req.Deadline.IsZero() {
		var dcancel context.CancelFunc
		hctx, dcancel = context.WithDeadline(hctx, req.Deadline)
		defer dcancel()
	}
	var watch sync.WaitGroup
	var watchErr error
	watch.Add(1)
	go func() {
		defer watch.Done()
		var b [1]byte
		n, err := c.Read(b[:])
		switch {
		case n > 0:
			watchErr = errWatcherData
			cancel()
		case isTimeout(err):
		default:
			cancel()
		}
	}()
	out, err := (*hp)(hctx, req)
	_ = c.SetReadDeadline(time.Now())
	watch.Wait()
	_ = c.SetReadDeadline(time.Time{})
	if watchErr != nil {
		return nil, watchErr
	}
	if err == nil && hctx.Err() != nil {
		err = hctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: %w", ErrDeadline, err)
	}
	return out, err
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// CallStage runs a stage on peer p and returns its output tensors. The call ends at
// req.Deadline or when ctx ends, whichever is first; the server's handler is cancelled
// then too. A failure the peer reports comes back as *RemoteError (errors.Is matches
// ErrRemote and the code's sentinel, such as ErrStageNotLoaded).
func (m *Mesh) CallStage(ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
	ctx, cancel := stageContext(ctx, req)
	defer cancel()
	sent := *req
	if dl, ok := ctx.Deadline(); ok {
		sent.Deadline = dl
	}
	if _, err := m.dataAddr(p); errors.Is(err, ErrNoDataAddr) {
		return m.callStageStream(ctx, p, &sent)
	}
	return m.callStageData(ctx, p, &sent)
}

func stageContext(ctx context.Context, req *StageRequest) (context.Context, context.CancelFunc) {
	if req.Deadline.IsZero() {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, req.Deadline)
}

func (m *Mesh) callStageData(ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
	hdr, err := encodeStageHeader(req)
	if err != nil {
		return nil, err
	}
	var out []tensor.Tensor
	err = m.exchange(ctx, p, func(d *dataConn) error {
		if _, err := d.Write(append([]byte{kindStage}, hdr...)); err != nil {
			return err
		}
		if _, err := tensor.Encode(d, req.Tensors); err != nil {
			return err
		}
		if err := d.flush(); err != nil {
			return err
		}
		if err := readResponseStatus(d, p); err != nil {
			return err
		}
		out, err = tensor.Decode(d, tensor.Limits{MaxTensors: maxOutputs, MaxBytes: m.cfg.MaxTensorBytes})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mesh: stage %s/%s#%d on %s: %w", req.Model, req.Version, req.Stage, shortID(p), err)
	}
	return out, nil
}

// callStageStream is stage RPC over a libp2p stream (TLS or Noise + yamux).
func (m *Mesh) callStageStream(ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
	hdr, err := encodeStageHeader(req)
	if err != nil {
		return nil, err
	}
	s, err := m.host.NewStream(ctx, p, ProtocolStage)
	if err != nil {
		return nil, fmt.Errorf("%w: stage stream to %s: %w", ErrUnreachable, p, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	out, err := func() ([]tensor.Tensor, error) {
		if _, err := s.Write(hdr); err != nil {
			return nil, err
		}
		if _, err := tensor.Encode(s, req.Tensors); err != nil {
			return nil, err
		}
		if err := readResponseStatus(s, p); err != nil {
			return nil, err
		}
		return tensor.Decode(s, tensor.Limits{MaxTensors: maxOutputs, MaxBytes: m.cfg.MaxTensorBytes})
	}()
	if err != nil {
		_ = s.Reset()
		err = deadlineError(ctx, err)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("mesh: stage %s/%s#%d on %s: %w", req.Model, req.Version, req.Stage, shortID(p), err)
	}
	_ = s.Close()
	return out, nil
}
