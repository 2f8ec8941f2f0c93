package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/events"
)

// errBacklogDone ends the stream once the recent events are printed (no --follow).
var errBacklogDone = errors.New("backlog printed")

// eventsReconnect is how long --follow waits before resuming a stream the node ended.
const eventsReconnect = 2 * time.Second

// eventsFlags: events prints the node's recent cluster events; --follow keeps
// printing them as they come, resuming after the last one seen when the stream drops.
func eventsFlags(fs *flag.FlagSet) step {
	follow := fs.Bool("follow", false, "keep printing events as they happen (reconnects and resumes)")
	fs.BoolVar(follow, "f", false, "short for --follow")
	recent := fs.Int("recent", 100, "how many past events to print first")
	return step{check: exactArgs(0, "events takes no arguments"), call: func(ctx context.Context, in invocation) (output, error) {
		return output{stream: func(w io.Writer) error {
			return streamEvents(ctx, in.client, w, in.json, *recent, *follow)
		}}, nil
	}}
}

func streamEvents(ctx context.Context, cl *client.Client, w io.Writer, asJSON bool, recent int, follow bool) error {
	var last uint64
	print := func(rec client.EventRecord) error {
		switch {
		case rec.Marker == "live" && !follow:
			return errBacklogDone
		case rec.Marker != "":
			return nil
		}
		last = rec.Event.ID
		if asJSON {
			b, err := json.Marshal(rec.Event)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "%s\n", b)
			return err
		}
		_, err := fmt.Fprintln(w, eventLine(rec.Event))
		return err
	}
	for {
		err := cl.Events(ctx, client.EventsOptions{After: last, Recent: recent}, print)
		switch {
		case errors.Is(err, errBacklogDone):
			return nil
		case err != nil && (ctx.Err() != nil || !follow):
			if ctx.Err() != nil {
				return nil // interrupted: the events so far are the output
			}
			return err
		case !follow:
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(eventsReconnect):
		}
	}
}

// eventLine is an event for people: time, type, subject and what happened.
func eventLine(e events.Event) string {
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	if e.Node != "" && e.Node != e.Subject {
		add("node=%s", e.Node)
	}
	if e.Stage != nil {
		add("stage=%d", *e.Stage)
	}
	if e.State != "" {
		add("%s", e.State)
	}
	if e.Epoch != 0 {
		add("epoch=%d", e.Epoch)
	}
	for _, m := range e.Moved {
		add("stage%d:+[%s]-[%s]", m.Stage, strings.Join(m.Added, ","), strings.Join(m.Removed, ","))
	}
	if e.From != "" || e.To != "" {
		add("%s -> %s", e.From, e.To)
	}
	if e.Detail != "" {
		add("(%s)", e.Detail)
	}
	return fmt.Sprintf("%s  %-14s  %-20s  %s", e.Time.Local().Format("15:04:05.000"), e.Type, e.Subject, strings.Join(parts, " "))
}
