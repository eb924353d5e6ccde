"""HF (CPU, float32) multiple-choice accuracy of ladder rungs on a few real ARC-Easy / PIQA items.

A quick check that a ladder's scores rise with step, independent of lm-eval and vLLM:
acc = argmax over choices of the summed log-probability of the choice tokens (lm-eval's ``acc``),
with lm-eval's prompts for arc_easy ("Question: ...\\nAnswer:") and piqa ("Question: ...\\nAnswer:").

    python scripts/ladder_accuracy.py DIR/step_* [--items 40]
    python scripts/ladder_accuracy.py --alpha-grid 0,0.5,0.9,1 --source FOLDER   # no checkpoints written
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_items(items: int) -> dict[str, list[tuple[str, list[str], int]]]:
    arc = []
    with open(DATA / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl") as handle:
        for line in handle:
            doc = json.loads(line)
            labels = [choice["label"] for choice in doc["question"]["choices"]]
            texts = [choice["text"] for choice in doc["question"]["choices"]]
            arc.append((f"Question: {doc['question']['stem']}\nAnswer:", texts, labels.index(doc["answerKey"])))
            if len(arc) == items:
                break
    piqa = []
    docs = (DATA / "piqa" / "data" / "valid.jsonl").read_text().splitlines()
    labels = (DATA / "piqa" / "data" / "valid-labels.lst").read_text().split()
    for line, label in zip(docs[:items], labels[:items]):
        doc = json.loads(line)
        piqa.append((f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(label)))
    return {"arc_easy": arc, "piqa": piqa}


@torch.no_grad()
def accuracy(model, tokenizer, items) -> float:
    """All choices of an item in one right-padded batch; the padding sits after every scored token."""
    correct = 0
    for context, choices, gold in items:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        choice_ids = [tokenizer(" " + choice, add_special_tokens=False)["input_ids"] for choice in choices]
        rows = [context_ids + ids for ids in choice_ids]
        width = max(map(len, rows))
        batch = torch.tensor([row + [0] * (width - len(row)) for row in rows])
        logprobs = torch.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)
        token_logprobs = logprobs.gather(2, batch[:, 1:, None])[..., 0]
        scores = [
            token_logprobs[i, len(context_ids) - 1 : len(rows[i]) - 1].sum().item() for i in range(len(rows))
        ]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == gold)
    return correct / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="*")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--alpha-grid", help="comma-separated alphas to blend in memory (needs --source)")
    parser.add_argument("--source")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = load_items(args.items)
    if args.alpha_grid:
        tokenizer = AutoTokenizer.from_pretrained(args.source)
        model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32).eval()
        real = {name: param.detach().clone() for name, param in model.named_parameters()}
        torch.manual_seed(args.seed)
        init = dict(AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).named_parameters())
        for alpha in [float(a) for a in args.alpha_grid.split(",")]:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(torch.lerp(init[name].detach(), real[name], alpha))
            row = {task: accuracy(model, tokenizer, items) for task, items in tasks.items()}
            print(json.dumps({"alpha": alpha, **row}), flush=True)
        return
    for folder in args.folders:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        meta = getattr(model.config, "e2lm", {}) or {}
        row = {task: accuracy(model, tokenizer, items) for task, items in tasks.items()}
        print(json.dumps({"folder": Path(folder).name, "step": meta.get("step"), "alpha": meta.get("alpha"), **row}),
              flush=True)


if __name__ == "__main__":
    main()
