"""llama.cpp against transformers on an exported model: exports a chat model of the hub to GGUF with
`pipeline/export.py`, loads the file in llama.cpp (through llama-cpp-python, which builds it from source) and in
transformers from the hub folder, and compares, on held-out prompts rendered by the chat template: the prompt's token
ids as llama.cpp tokenizes the rendered text, the next-token logits after the prompt, the greedy reply token for
token, and the reply of llama.cpp's own chat completion, which renders the template stored in the file.

    pip install llama-cpp-python                # builds llama.cpp; not a dependency of the project
    python bench/gguf_llama_cpp.py hub/quickstart-sft --prompts 50

The last lines print `prompt tokens same A/N`, `greedy replies same B/N`, `chat completion same C/N` and
`max |logit difference| D`.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.data.splits import dialog_splits, sample_pairs
from minichatgpt.generation import fit_history
from minichatgpt.gguf import export
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a chat model folder of the hub, e.g. hub/quickstart-sft")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml", help="whose held-out dialogs give the prompts")
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts, spread over the conversations")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--dtype", choices=("f32", "f16"), default="f32")
    args = parser.parse_args()
    try:
        from llama_cpp import Llama, llama_supports_gpu_offload
    except ImportError:
        raise SystemExit("error: llama-cpp-python is not installed: pip install llama-cpp-python") from None

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    context = model.config.max_position_embeddings
    recipe = load_recipe(args.recipe)
    data_args = recipe.parse_stage("eval", [])[0]
    # The contexts the evaluation and the RL stage prompt with.
    context_turns = recipe.parse("ppo", defaults=trainer_defaults())[0].context_turns
    conversations = [history for _, history, _ in sample_pairs(dialog_splits(data_args)[1]["messages"],
                                                               context_turns, args.prompts, data_args.split_seed)]
    # Each conversation as the chat fits it (oldest turns dropped); one whose last turn alone is too long is left out:
    # the chat cuts its tokens, which a chat completion from messages cannot, and past the model's learned positions
    # llama.cpp aborts.
    budget = context - args.max_new_tokens
    fitted = [(c[dropped:], ids) for c in conversations for ids, dropped in [fit_history(tokenizer, c, budget)]]
    fitted = [(c, ids) for c, ids in fitted
              if len(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)) <= budget]
    print(f"{len(fitted)} of {len(conversations)} held-out prompts fit in {budget} tokens with their last turn whole")
    conversations, prompts = [c for c, _ in fitted], [ids for _, ids in fitted]
    if not prompts:
        raise SystemExit(f"error: {args.recipe}: no held-out prompt fits in {budget} tokens")
    end = tokenizer.convert_tokens_to_ids("<|end|>")

    with tempfile.TemporaryDirectory() as work:
        gguf_path, _ = export(args.model, Path(work) / "model.gguf", args.dtype)
        llm = Llama(model_path=str(gguf_path), n_ctx=context, logits_all=True, verbose=False, seed=0)
        print(f"llama.cpp loaded {gguf_path.name} ({args.dtype}); GPU offload {llama_supports_gpu_offload()}")
        same_tokens = same_greedy = same_chat = 0
        max_diff = 0.0
        for conversation, prompt in zip(conversations, prompts):
            text = tokenizer.decode(prompt)
            same_tokens += llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == prompt
            with torch.no_grad():
                reference = model(torch.tensor([prompt])).logits[0, -1].numpy()
                hf_reply = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=args.max_new_tokens,
                                          repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=end,
                                          pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
            hf_reply = hf_reply[: hf_reply.index(end) + 1] if end in hf_reply else hf_reply
            llm.reset()
            llm.eval(prompt)
            max_diff = max(max_diff, float(np.abs(np.asarray(llm.scores[len(prompt) - 1]) - reference).max()))
            llama_reply = []
            for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                llama_reply.append(token)
                if token == end or len(llama_reply) == args.max_new_tokens:
                    break
            same_greedy += llama_reply == hf_reply
            completion = llm.create_chat_completion(messages=conversation, max_tokens=args.max_new_tokens,
                                                    temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                                    repeat_penalty=1.0, stop=["<|end|>"])
            hf_text = tokenizer.decode(hf_reply, skip_special_tokens=True).strip()
            same_chat += completion["choices"][0]["message"]["content"].strip() == hf_text
    n = len(prompts)
    print(f"prompt tokens same {same_tokens}/{n}")
    print(f"greedy replies same {same_greedy}/{n}")
    print(f"chat completion same {same_chat}/{n}")
    print(f"max |logit difference| {max_diff:.2e}")


if __name__ == "__main__":
    main()
