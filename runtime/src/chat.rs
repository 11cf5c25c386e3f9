//! Chat templates: instruct models ship a Jinja template (in `tokenizer_config.json` or
//! GGUF metadata) that turns a list of messages into the exact prompt text the model was
//! trained on. `llmc run --chat` and the server's chat endpoint both render it here,
//! with the variables Hugging Face's `apply_chat_template` provides.

use serde_json::json;

/// A chat template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct ChatError(String);

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Renders `template` for `messages`. `bos_token` / `eos_token` are the special tokens'
/// text (templates often print them); `add_generation_prompt` appends the header that
/// starts the assistant's turn.
pub fn apply_chat_template(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, ChatError> {
    let mut env = minijinja::Environment::new();
    // Hugging Face templates call `raise_exception(msg)` to reject a conversation.
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| ChatError(format!("does not parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| ChatError(e.to_string()))?;
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    tmpl.render(minijinja::context! {
        messages => msgs,
        bos_token => bos_token,
        eos_token => eos_token,
        add_generation_prompt => add_generation_prompt,
    })
    .map_err(|e| ChatError(format!("rendering failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ChatML template SmolLM2-Instruct ships (as in its tokenizer_config.json).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let out = apply_chat_template(
            CHATML,
            &[Message::new("user", "What is 2+2?")],
            "<|im_start|>",
            "<|im_end|>",
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let out = apply_chat_template(
            CHATML,
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            "",
            "",
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn special_tokens_and_exceptions() {
        let t = "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}\
                 {{ raise_exception('tools are not supported') }}{% endif %}\
                 [{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}";
        let out = apply_chat_template(t, &[Message::new("user", "x")], "<s>", "</s>", true);
        assert_eq!(out.unwrap(), "<s>[user]x</s>");
        let e = apply_chat_template(t, &[Message::new("tool", "x")], "", "", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tools are not supported"), "{e}");
        let e = apply_chat_template("{% for %}", &[], "", "", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
