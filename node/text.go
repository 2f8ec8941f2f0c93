package node

// The text side of generative models: the tokenizer and chat template the API turns
// text into token ids with. A cluster keeps them with the model version in the Raft
// state (the tokenizer as a blob any holder serves); a single node keeps them beside
// the model file. Either way a tokenizer is parsed once per content and cached.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/tokenizer"
)

// textFiles locates one model's text side.
type textFiles struct {
	// key identifies the content (a blob hash, or a path and its modification time),
	// so a redeploy with another tokenizer is parsed afresh.
	key string
	// version is the model version the files belong to.
	version string
	// tokenizer reads the tokenizer.json; it may fetch it from a peer.
	tokenizer    func(ctx context.Context) ([]byte, error)
	chatTemplate string
}

// modelTexts serves api.TextService from a source of textFiles.
type modelTexts struct {
	source func(ctx context.Context, model, version string) (textFiles, error)

	mu    sync.Mutex
	cache map[string]api.ModelText
}

// textCacheSize bounds the parsed tokenizers kept (a GPT-2 one is ~20 MB parsed); a
// node serves a handful of generative models.
const textCacheSize = 8

func newModelTexts(source func(ctx context.Context, model, version string) (textFiles, error)) *modelTexts {
	return &modelTexts{source: source, cache: map[string]api.ModelText{}}
}

// ModelText implements api.TextService. The tokenizer is read and parsed with no lock
// held: two first requests may both parse it, and neither waits on the other's fetch.
func (t *modelTexts) ModelText(ctx context.Context, model, version string) (api.ModelText, error) {
	f, err := t.source(ctx, model, version)
	if err != nil {
		return api.ModelText{}, err
	}
	key := f.key + "\x00" + f.chatTemplate
	t.mu.Lock()
	mt, ok := t.cache[key]
	t.mu.Unlock()
	// Versions may share a tokenizer: the cached entry is the parsed files, and the
	// answer names the version asked about.
	mt.Version = f.version
	if ok {
		return mt, nil
	}
	b, err := f.tokenizer(ctx)
	if err != nil {
		return api.ModelText{}, fmt.Errorf("model %s: reading its tokenizer: %w", model, err)
	}
	if mt.Tokenizer, err = tokenizer.Parse(b); err != nil {
		return api.ModelText{}, fmt.Errorf("model %s: %w", model, err)
	}
	if f.chatTemplate != "" {
		if mt.Chat, err = tokenizer.ParseChatTemplate(f.chatTemplate); err != nil {
			return api.ModelText{}, fmt.Errorf("model %s: %w", model, err)
		}
	}
	t.mu.Lock()
	if len(t.cache) >= textCacheSize {
		clear(t.cache)
	}
	t.cache[key] = mt
	t.mu.Unlock()
	return mt, nil
}

// Beside a single node's model file NAME.onnx: NAME.tokenizer.json and NAME.chat.tmpl.
const (
	tokenizerSuffix    = ".tokenizer.json"
	chatTemplateSuffix = ".chat.tmpl"
)

// textPaths are the text files that go with the model file at modelPath.
func textPaths(modelPath string) (tokenizerPath, templatePath string) {
	base := strings.TrimSuffix(modelPath, ".onnx")
	return base + tokenizerSuffix, base + chatTemplateSuffix
}

// ModelText serves a single node's api.TextService: the tokenizer and chat template
// beside the model's file.
func (n *Node) ModelText(ctx context.Context, model, version string) (api.ModelText, error) {
	return n.texts.ModelText(ctx, model, version)
}

// singleNodeText finds a single node's model and the text files beside it.
func (n *Node) singleNodeText(ctx context.Context, model, version string) (textFiles, error) {
	m, err := n.lookup(model, version)
	if err != nil {
		return textFiles{}, err
	}
	tokPath, tmplPath := textPaths(m.path)
	fi, err := os.Stat(tokPath)
	if errors.Is(err, os.ErrNotExist) {
		return textFiles{}, fmt.Errorf("%w: %s has no %s beside it", api.ErrNotGenerative, model, tokPath)
	}
	if err != nil {
		return textFiles{}, err
	}
	f := textFiles{
		key:       fmt.Sprintf("%s@%d.%d", tokPath, fi.ModTime().UnixNano(), fi.Size()),
		version:   m.version,
		tokenizer: func(context.Context) ([]byte, error) { return os.ReadFile(tokPath) },
	}
	switch b, err := os.ReadFile(tmplPath); {
	case err == nil:
		f.chatTemplate = string(b)
	case !errors.Is(err, os.ErrNotExist):
		return textFiles{}, err
	}
	return f, nil
}

// writeUploadText stores an upload's tokenizer and chat template beside its model
// file, and removes those of an earlier upload that the new one does not have.
func writeUploadText(modelPath string, opts api.DeployOptions) error {
	tokPath, tmplPath := textPaths(modelPath)
	for path, content := range map[string]string{tokPath: string(opts.Tokenizer), tmplPath: opts.ChatTemplate} {
		if content == "" {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		if err := writeFileAtomic(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// removeUploadText deletes an uploaded model's text files with it.
func removeUploadText(modelPath string) error {
	tokPath, tmplPath := textPaths(modelPath)
	for _, p := range []string{tokPath, tmplPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
