package tokenizer

import (
	"fmt"
	"strings"
	"text/template"
)

// ChatMessage is one turn of a conversation.
type ChatMessage struct {
	Role    string
	Content string
}

// ChatTemplate renders a conversation into the prompt text a model was trained on. It
// is a Go text/template run on ChatInput; a model deployed without one gets
// DefaultChatTemplate.
type ChatTemplate struct {
	tmpl *template.Template
}

// ChatInput is what a chat template sees.
type ChatInput struct {
	Messages []ChatMessage
	// AddGenerationPrompt is true: the prompt ends where the assistant's answer begins.
	AddGenerationPrompt bool
	// EOS is the tokenizer's end-of-text token ("<|endoftext|>"), "" when it has none.
	EOS string
}

// DefaultChatTemplateSource is a plain role-prefixed transcript, for base models that
// were never trained on chat markers.
const DefaultChatTemplateSource = `{{range .Messages}}{{.Role}}: {{.Content}}
{{end}}{{if .AddGenerationPrompt}}assistant:{{end}}`

// DefaultChatTemplate is the template of a model deployed without one.
var DefaultChatTemplate = mustChatTemplate(DefaultChatTemplateSource)

func mustChatTemplate(src string) *ChatTemplate {
	t, err := ParseChatTemplate(src)
	if err != nil {
		panic(err)
	}
	return t
}

// ParseChatTemplate checks a template's syntax and that it renders a sample
// conversation, so a broken template is refused at deploy rather than at the first
// chat request.
func ParseChatTemplate(src string) (*ChatTemplate, error) {
	tmpl, err := template.New("chat").Option("missingkey=error").Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%w: chat template: %w", ErrInvalid, err)
	}
	t := &ChatTemplate{tmpl: tmpl}
	sample := []ChatMessage{{"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"user", "u"}}
	if _, err := t.Render(sample, ""); err != nil {
		return nil, err
	}
	return t, nil
}

// Render writes the prompt for messages.
func (t *ChatTemplate) Render(messages []ChatMessage, eos string) (string, error) {
	var b strings.Builder
	in := ChatInput{Messages: messages, AddGenerationPrompt: true, EOS: eos}
	if err := t.tmpl.Execute(&b, in); err != nil {
		return "", fmt.Errorf("%w: chat template: %w", ErrInvalid, err)
	}
	return b.String(), nil
}

// EOS returns the end-of-text token's text and id, when the tokenizer has one.
func (t *Tokenizer) EOS() (string, int32, bool) {
	id, ok := t.TokenID(endOfText)
	return endOfText, id, ok
}
