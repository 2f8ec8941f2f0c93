package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/events"
)

// EventsOptions say where GET /v1/events starts.
type EventsOptions struct {
	// After resumes after this event id (Last-Event-ID); 0 does not.
	After uint64
	// Recent asks for the newest Recent events first when After is 0.
	Recent int
}

// EventRecord is one record of the event stream: an event, or a marker ("gap": the
// events after After are gone from the node's window; "live": the backlog is over).
type EventRecord struct {
	Marker string
	Event  events.Event
}

// Events reads GET /v1/events and hands each record to fn until the stream ends, ctx
// ends or fn returns an error (returned as is). A stream the node ends (shutdown, a
// client cut off for being slow) returns nil: resume with the last id seen.
func (c *Client) Events(ctx context.Context, opts EventsOptions, fn func(EventRecord) error) error {
	path := "/v1/events"
	hdr := http.Header{}
	if opts.After > 0 {
		hdr.Set("Last-Event-ID", strconv.FormatUint(opts.After, 10))
	} else if opts.Recent > 0 {
		path += "?recent=" + strconv.Itoa(opts.Recent)
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil, 0, hdr, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	var marker, data string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				marker = value
			case "data":
				data += value
			}
			continue
		}
		rec := EventRecord{Marker: marker}
		if err := decodeEventData(&rec, data); err != nil {
			return err
		}
		marker, data = "", ""
		if rec.Marker == "" && rec.Event.ID == 0 {
			continue // retry: or a comment
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

func decodeEventData(rec *EventRecord, data string) error {
	if rec.Marker != "" || data == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(data), &rec.Event); err != nil {
		return fmt.Errorf("%w: event %q: %w", ErrBadResponse, data, err)
	}
	return nil
}

// Links is GET /v1/links.
func (c *Client) Links(ctx context.Context) (wire.LinkList, error) {
	var l wire.LinkList
	_, err := c.getJSON(ctx, "/v1/links", &l)
	return l, err
}
