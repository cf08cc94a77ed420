"""Oracle tasks run by transformers + torch (CPU, float32) in the Python 3.11 oracle environment.

Usage: python hf_oracle.py REQUEST.json OUT_DIR. Imported by nothing in the project; the tests
reach it through `tests/oracle/hf_env.py`.

Tasks:
  tiny_models     build tiny random HF models from configs, save them as safetensors, and record
                  full-sequence logits and greedy continuations for random token ids.
  gguf_reference  load a GGUF through transformers' own GGUF loader and record tokenizations,
                  chat-template renderings and logits on a passage.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "mistral": transformers.MistralConfig,
}


def randomize(model, seed):
    """Replaces every parameter with fresh noise (norm weights around 1), so that no weight is
    zero or one and every code path (biases, norms) matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                fan_in = param.shape[-1]
                param.copy_(noise * (1.5 / fan_in**0.5))


def tiny_models(request, out_dir):
    for spec in request["models"]:
        config = CONFIG_CLASSES[spec["family"]](**spec["config"])
        torch.manual_seed(spec["seed"])
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.eval()
        randomize(model, spec["seed"])
        model_dir = out_dir / spec["name"]
        model.save_pretrained(model_dir, safe_serialization=True)
        rng = np.random.default_rng(spec["seed"])
        input_ids = rng.integers(0, config.vocab_size, (spec["batch"], spec["length"]))
        with torch.no_grad():
            ids = torch.from_numpy(input_ids)
            logits = model(ids).logits.float().numpy()
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=spec["new_tokens"],
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )[:, input_ids.shape[1] :].numpy()
        np.savez(
            model_dir / "reference.npz", input_ids=input_ids, logits=logits, generated=generated
        )


def gguf_reference(request, out_dir):
    path = Path(request["gguf"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    result = {
        "encodings": [tokenizer.encode(text, add_special_tokens=False) for text in request["texts"]]
    }
    result["chat_texts"] = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        for messages in request["chats"]
        for generation in (True, False)
    ]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    ids = tokenizer.encode(request["passage"], add_special_tokens=False)[: request["max_tokens"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    result["passage_nll"] = float(nll)
    result["passage_ids"] = ids
    (out_dir / "reference.json").write_text(json.dumps(result))
    np.save(out_dir / "logits.npy", logits.numpy())


def main():
    request_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    payload = json.loads(request_path.read_text())
    torch.set_grad_enabled(False)
    {"tiny_models": tiny_models, "gguf_reference": gguf_reference}[payload["task"]](
        payload["request"], out_dir
    )


if __name__ == "__main__":
    main()
