package consensus

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogBridge forwards hashicorp/raft's hclog output into slog, so raft's lines
// carry component=raft and go wherever the node's logs go.
type hclogBridge struct {
	logger  *slog.Logger
	name    string
	implied []any
	level   hclog.Level
}

var _ hclog.Logger = (*hclogBridge)(nil)

func newHclogBridge(logger *slog.Logger, level hclog.Level) *hclogBridge {
	return &hclogBridge{logger: logger.With("component", "raft"), level: level}
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (b *hclogBridge) Log(level hclog.Level, msg string, args ...any) {
	if level != hclog.Off && level < b.level {
		return
	}
	if level == hclog.Off {
		return
	}
	attrs := make([]any, 0, len(b.implied)+len(args)+2)
	if b.name != "" {
		attrs = append(attrs, "subsystem", b.name)
	}
	attrs = append(attrs, b.implied...)
	for _, a := range args {
		// hclog.Fmt values are deferred Sprintf calls; slog would print the
		// raw slice.
		if f, ok := a.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				a = fmt.Sprintf(format, f[1:]...)
			}
		}
		attrs = append(attrs, a)
	}
	b.logger.Log(context.Background(), slogLevel(level), msg, attrs...)
}

func (b *hclogBridge) Trace(msg string, args ...any) { b.Log(hclog.Trace, msg, args...) }
func (b *hclogBridge) Debug(msg string, args ...any) { b.Log(hclog.Debug, msg, args...) }
func (b *hclogBridge) Info(msg string, args ...any)  { b.Log(hclog.Info, msg, args...) }
func (b *hclogBridge) Warn(msg string, args ...any)  { b.Log(hclog.Warn, msg, args...) }
func (b *hclogBridge) Error(msg string, args ...any) { b.Log(hclog.Error, msg, args...) }

func (b *hclogBridge) IsTrace() bool { return b.level <= hclog.Trace }
func (b *hclogBridge) IsDebug() bool { return b.level <= hclog.Debug }
func (b *hclogBridge) IsInfo() bool  { return b.level <= hclog.Info }
func (b *hclogBridge) IsWarn() bool  { return b.level <= hclog.Warn }
func (b *hclogBridge) IsError() bool { return b.level <= hclog.Error }

func (b *hclogBridge) ImpliedArgs() []any { return b.implied }

func (b *hclogBridge) With(args ...any) hclog.Logger {
	c := *b
	c.implied = append(append([]any(nil), b.implied...), args...)
	return &c
}

func (b *hclogBridge) Name() string { return b.name }

func (b *hclogBridge) Named(name string) hclog.Logger {
	c := *b
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (b *hclogBridge) ResetNamed(name string) hclog.Logger {
	c := *b
	c.name = name
	return &c
}

func (b *hclogBridge) SetLevel(level hclog.Level) { b.level = level }

func (b *hclogBridge) GetLevel() hclog.Level { return b.level }

func (b *hclogBridge) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(b.StandardWriter(opts), "", 0)
}

func (b *hclogBridge) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return bridgeWriter{b}
}

// bridgeWriter turns lines written to a standard logger into Info records.
type bridgeWriter struct{ b *hclogBridge }

func (w bridgeWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	w.b.Log(hclog.Info, msg)
	return len(p), nil
}
