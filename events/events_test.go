package events

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func publishN(b *Bus, n int) {
	for i := range n {
		b.Publish(Event{Type: MemberState, Subject: fmt.Sprintf("node-%d", i)})
	}
}

func receive(t *testing.T, s *Subscription, n int) []Event {
	t.Helper()
	var out []Event
	for len(out) < n {
		select {
		case e := <-s.C():
			out = append(out, e)
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d of %d events", len(out), n)
		}
	}
	return out
}

func TestBusDeliversEventsInOrderToEverySubscriber(t *testing.T) {
	b := NewBus(16, 64)
	_, _, s1 := b.Subscribe(0)
	_, _, s2 := b.Subscribe(0)
	defer s1.Cancel()
	defer s2.Cancel()
	var wg sync.WaitGroup
	for p := range 4 { // concurrent publishers: ids must still be strictly increasing per subscriber
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				b.Publish(Event{Type: Drain, Subject: fmt.Sprintf("p%d-%d", p, i)})
			}
		}()
	}
	wg.Wait()
	for _, s := range []*Subscription{s1, s2} {
		got := receive(t, s, 40)
		for i, e := range got {
			if e.ID != uint64(i+1) {
				t.Fatalf("event %d has id %d, want %d", i, e.ID, i+1)
			}
			if e.Time.IsZero() {
				t.Fatalf("event %d has no time", e.ID)
			}
		}
	}
}

func TestBusResumesAfterLastEventID(t *testing.T) {
	b := NewBus(8, 8)
	publishN(b, 5)
	backlog, gap, s := b.Subscribe(3)
	defer s.Cancel()
	if gap {
		t.Fatal("gap reported for an id inside the window")
	}
	if len(backlog) != 2 || backlog[0].ID != 4 || backlog[1].ID != 5 {
		t.Fatalf("backlog after 3 = %+v, want ids 4 and 5", backlog)
	}
	b.Publish(Event{Type: Drain, Subject: "n"})
	if e := receive(t, s, 1)[0]; e.ID != 6 {
		t.Fatalf("live event id %d, want 6", e.ID)
	}
	backlog, gap, s2 := b.Subscribe(6)
	defer s2.Cancel()
	if gap || len(backlog) != 0 {
		t.Fatalf("resuming at the newest id: backlog %v gap %v, want none", backlog, gap)
	}
}

func TestBusReportsAGapWhenTheWindowHasMovedOn(t *testing.T) {
	b := NewBus(4, 8)
	publishN(b, 10) // window keeps 7..10
	backlog, gap, s := b.Subscribe(2)
	defer s.Cancel()
	if !gap {
		t.Fatal("no gap reported for an id older than the window")
	}
	if len(backlog) != 4 || backlog[0].ID != 7 || backlog[3].ID != 10 {
		t.Fatalf("backlog = %+v, want the window 7..10", backlog)
	}
	// An id the bus never gave out (the node restarted and counts again from 1).
	backlog, gap, s2 := b.Subscribe(500)
	defer s2.Cancel()
	if !gap || len(backlog) != 4 {
		t.Fatalf("future id: gap %v backlog %d, want gap and the whole window", gap, len(backlog))
	}
	if got := b.Recent(2); len(got) != 2 || got[0].ID != 9 || got[1].ID != 10 {
		t.Fatalf("Recent(2) = %+v, want ids 9 and 10", got)
	}
}

func TestBusCutsOffASlowSubscriberAndKeepsServingOthers(t *testing.T) {
	b := NewBus(64, 4)
	_, _, slow := b.Subscribe(0)
	_, _, fast := b.Subscribe(0)
	defer fast.Cancel()
	for i := range 10 {
		b.Publish(Event{Type: StageReady, Subject: fmt.Sprint(i)})
		receive(t, fast, 1)
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("a subscriber that read nothing is still subscribed after its buffer filled")
	}
	if !errors.Is(slow.Err(), ErrSlowConsumer) {
		t.Fatalf("slow subscriber's Err = %v, want ErrSlowConsumer", slow.Err())
	}
	if len(slow.ch) != 4 {
		t.Fatalf("slow subscriber holds %d events, want its buffer of 4 and no more", len(slow.ch))
	}
	b.mu.Lock()
	n := len(b.subs)
	b.mu.Unlock()
	if n != 1 {
		t.Fatalf("bus holds %d subscribers, want only the fast one", n)
	}
	if fast.Err() != nil {
		t.Fatalf("fast subscriber ended: %v", fast.Err())
	}
}

func TestBusCloseEndsSubscriptions(t *testing.T) {
	b := NewBus(4, 4)
	_, _, s := b.Subscribe(0)
	s.Cancel()
	s.Cancel() // twice is fine
	if s.Err() != nil {
		t.Fatalf("cancelled subscription's Err = %v, want nil", s.Err())
	}
	_, _, s2 := b.Subscribe(0)
	b.Close()
	if !errors.Is(s2.Err(), ErrClosed) {
		t.Fatalf("Err after Close = %v, want ErrClosed", s2.Err())
	}
	if e := b.Publish(Event{Type: Drain}); e.ID != 0 {
		t.Fatalf("publish after close got id %d, want it dropped", e.ID)
	}
	_, _, s3 := b.Subscribe(0)
	if !errors.Is(s3.Err(), ErrClosed) {
		t.Fatalf("subscribe after Close: Err = %v, want ErrClosed", s3.Err())
	}
}
