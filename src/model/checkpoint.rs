//! HF-format checkpoints: `config.json` + `model.safetensors` (+ tokenizer files), and
//! corefocus's own checkpoints (the same plus `corefocus.json`).
