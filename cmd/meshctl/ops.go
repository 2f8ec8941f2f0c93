package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
)

// actionResult is what the commands that change one thing print with --json.
type actionResult struct {
	Action string `json:"action"`
	Target string `json:"target"`
	// Waited is how long the command waited for the change to take effect.
	Waited float64 `json:"waited_seconds,omitempty"`
}

// actionOutput prints res with --json and the sentence human otherwise.
func actionOutput(res actionResult, human string) output {
	return output{value: res, human: func(w io.Writer) error {
		_, err := fmt.Fprintln(w, human)
		return err
	}}
}

// drainFlags: drain marks a node draining; --wait waits until its stages have moved.
func drainFlags(fs *flag.FlagSet) step {
	wait := fs.Duration("wait", 0, "wait up to this long until the node serves no stage (0: do not wait)")
	return step{check: exactArgs(1, "want exactly one NAME"), call: func(ctx context.Context, in invocation) (output, error) {
		name := in.pos[0]
		if err := in.client.DrainNode(ctx, name); err != nil {
			return output{}, err
		}
		res := actionResult{Action: "drain", Target: name}
		human := fmt.Sprintf("draining %s: it takes no new stages and its stages move elsewhere", name)
		if *wait > 0 {
			start := time.Now()
			if err := waitDrained(ctx, in.client, name, *wait); err != nil {
				return output{}, err
			}
			res.Waited = time.Since(start).Seconds()
			human = fmt.Sprintf("drained %s: it serves no stage (%.1fs); it can be stopped or removed", name, res.Waited)
		}
		return actionOutput(res, human), nil
	}}
}

// waitDrained polls the node list until name serves no stage.
func waitDrained(ctx context.Context, cl *client.Client, name string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last string
	for {
		nodes, err := cl.Nodes(ctx)
		if err == nil {
			i := slices.IndexFunc(nodes, func(n wire.NodeStatus) bool { return n.Name == name })
			if i < 0 {
				return fmt.Errorf("node %s is no longer listed", name)
			}
			if len(nodes[i].Models) == 0 {
				return nil
			}
			last = strings.Join(nodes[i].Models, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s still serves %s after %s: %w", name, last, d, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func callUndrain(ctx context.Context, in invocation) (output, error) {
	name := in.pos[0]
	if err := in.client.UndrainNode(ctx, name); err != nil {
		return output{}, err
	}
	return actionOutput(actionResult{Action: "undrain", Target: name}, fmt.Sprintf("%s takes stages again", name)), nil
}

func callRemove(ctx context.Context, in invocation) (output, error) {
	name := in.pos[0]
	if err := in.client.RemoveNode(ctx, name); err != nil {
		return output{}, err
	}
	return actionOutput(actionResult{Action: "remove", Target: name}, fmt.Sprintf("removed %s from the cluster", name)), nil
}

// callPlan shows a model's plan: its stages and the nodes serving each.
func callPlan(ctx context.Context, in invocation) (output, error) {
	m, err := in.client.Model(ctx, in.pos[0])
	if err != nil {
		return output{}, err
	}
	return output{value: m, human: func(w io.Writer) error {
		fmt.Fprintf(w, "%s version %s: %d stages, ready: %s\n", m.Name, m.Version, len(m.Stages), yesNo(m.Ready))
		if m.Reason != "" {
			fmt.Fprintf(w, "  %s\n", m.Reason)
		}
		tw := newTable(w)
		fmt.Fprintln(tw, "STAGE\tSIZE\tREADY\tREPLICAS")
		for _, s := range m.Stages {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Index, humanBytes(s.Size), yesNo(s.Ready), strings.Join(s.Replicas, ", "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		writeCompression(w, m.Compression)
		return nil
	}}, nil
}

func callJoinToken(ctx context.Context, in invocation) (output, error) {
	jt, err := in.client.JoinToken(ctx)
	if err != nil {
		return output{}, err
	}
	return output{value: jt, human: func(w io.Writer) error {
		fmt.Fprintf(w, "cluster %s\nsecret  %s\n\nOn the new node:\n  echo %s > cluster.secret && chmod 600 cluster.secret\n", jt.ClusterID, jt.Secret, jt.Secret)
		for _, s := range jt.Seeds {
			fmt.Fprintf(w, "  meshnode --join %s --cluster-secret-file cluster.secret\n", s)
		}
		return nil
	}}, nil
}

// callDoctor asks a node why it can or cannot see its peers; it fails (exit 1) when
// any peer has a problem, so a script can use it as a check.
func callDoctor(ctx context.Context, in invocation) (output, error) {
	rep, err := in.client.Doctor(ctx, in.pos...)
	if err != nil {
		return output{}, err
	}
	out := output{value: rep, human: func(w io.Writer) error {
		fmt.Fprintf(w, "seen from %s:\n", rep.Self)
		tw := newTable(w)
		fmt.Fprintln(tw, "TARGET\tNAME\tDISCOVERED\tREACHABLE\tADMITTED\tSTATE\tRTT\tCAUSE")
		for _, p := range rep.Peers {
			rtt := "-"
			if p.RTTMillis > 0 {
				rtt = fmt.Sprintf("%.2fms", p.RTTMillis)
			}
			cause := p.Cause
			if cause == "" {
				cause = "ok"
			} else if p.Detail != "" {
				cause += ": " + p.Detail
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortTarget(p.Target), p.Name, yesNo(p.Discovered), yesNo(p.Reachable), yesNo(p.Admitted), p.State, rtt, cause)
		}
		return tw.Flush()
	}}
	bad := 0
	for _, p := range rep.Peers {
		if p.Cause != "" {
			bad++
		}
	}
	if bad > 0 {
		out.failed = fmt.Errorf("%d of %d peers have a problem", bad, len(rep.Peers))
	}
	return out, nil
}

// shortTarget shortens a peer id for a table (a multiaddr or name stays whole).
func shortTarget(t string) string {
	if len(t) > 20 && !strings.ContainsAny(t, "/:") {
		return t[:8] + "…" + t[len(t)-6:]
	}
	return t
}

// tokenCommands manage API tokens: create, list, revoke.
var tokenCommands = map[string]command{
	"create": {flags: tokenCreateFlags},
	"list":   {flags: commonFlagsOnly(exactArgs(0, "token list takes no arguments"), callTokenList)},
	"revoke": {flags: commonFlagsOnly(exactArgs(1, "want: token revoke ID"), callTokenRevoke)},
}

func tokenCreateFlags(fs *flag.FlagSet) step {
	scope := fs.String("scope", "", "admin or infer (required)")
	name := fs.String("name", "", "the token's id (default: a generated one)")
	check := func(pos []string) error {
		if len(pos) != 0 || (*scope != "admin" && *scope != "infer") {
			return usagef("want: token create --scope admin|infer [--name N]")
		}
		return nil
	}
	return step{check: check, call: func(ctx context.Context, in invocation) (output, error) {
		tok, err := in.client.CreateToken(ctx, *scope, *name)
		if err != nil {
			return output{}, err
		}
		return output{value: tok, human: func(w io.Writer) error {
			fmt.Fprintf(w, "token %s (scope %s) created; its secret, shown only now:\n%s\n", tok.ID, tok.Scope, tok.Secret)
			return nil
		}}, nil
	}}
}

func callTokenList(ctx context.Context, in invocation) (output, error) {
	toks, err := in.client.Tokens(ctx)
	if err != nil {
		return output{}, err
	}
	return output{value: wire.TokenList{Tokens: toks}, human: func(w io.Writer) error {
		tw := newTable(w)
		fmt.Fprintln(tw, "ID\tSCOPE\tCREATED\tREVOKED")
		for _, t := range toks {
			revoked := "no"
			if t.Revoked {
				revoked = t.RevokedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Scope, t.Created.Format(time.RFC3339), revoked)
		}
		return tw.Flush()
	}}, nil
}

func callTokenRevoke(ctx context.Context, in invocation) (output, error) {
	id := in.pos[0]
	if err := in.client.RevokeToken(ctx, id); err != nil {
		return output{}, err
	}
	return actionOutput(actionResult{Action: "revoke", Target: id}, fmt.Sprintf("token %s revoked", id)), nil
}

// waitModelReady polls the model until every stage has a ready replica, drawing the
// distribution's progress (stages ready of stages) on w when w is not nil.
func waitModelReady(ctx context.Context, cl *client.Client, name string, d time.Duration, w io.Writer) (wire.ModelStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var bar *progressBar
	if w != nil {
		bar = &progressBar{w: w, label: "distribute " + name, start: time.Now(), unit: "stages"}
		defer bar.done()
	}
	var last error
	for {
		m, err := cl.Model(ctx, name)
		if err == nil {
			ready := 0
			for _, s := range m.Stages {
				if s.Ready {
					ready++
				}
			}
			if bar != nil && len(m.Stages) > 0 {
				bar.update(int64(ready), int64(len(m.Stages)))
			}
			if m.Ready {
				return m, nil
			}
			last = fmt.Errorf("%d of %d stages ready %s", ready, len(m.Stages), m.Reason)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return wire.ModelStatus{}, fmt.Errorf("model %s not ready after %s: %w", name, d, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// progressOut is where progress bars go: stderr, so stdout stays parseable.
var progressOut io.Writer = os.Stderr
