"""Before and after a fine-tune: the base model and the tuned one answer questions phrased unlike any
in the training data; each answer is checked for the fact it should hold.

.venv/bin/python examples/finetune_demo.py BASE TUNED QUESTIONS.json
(exits 1 unless the tuned model states every fact and the base states none)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgeslm.engines.base import SamplingParams
from edgeslm.generation import generate, load


def answers(name: str, questions: list[str]) -> list[str]:
    model = load(name)
    try:
        greedy = SamplingParams(temperature=0)
        chat = [{"role": "system", "content": model.defaults["system"]}] if model.defaults.get("system") else []
        chat += list(model.defaults.get("messages") or [])  # a created model's example messages, as run sends them
        return [generate(model, [*chat, {"role": "user", "content": q}], max_tokens=40, sampling=greedy).text.strip()
                for q in questions]
    finally:
        model.close()


def main(base: str, tuned: str, questions_file: Path) -> int:
    items = json.loads(questions_file.read_text())
    questions = [item["question"] for item in items]
    before, after = answers(base, questions), answers(tuned, questions)
    taught = untaught = 0
    for item, old, new in zip(items, before, after, strict=True):
        fact = item["fact"]
        taught += fact in new
        untaught += fact in old
        print(f"Q: {item['question']}   (the fact: {fact})")
        print(f"   {base:>28}: {old[:110]!r}{'  [has it]' if fact in old else ''}")
        print(f"   {tuned:>28}: {new[:110]!r}{'  [has it]' if fact in new else '  [MISSING]'}")
    print(f"\n{tuned} states {taught}/{len(items)} facts; {base} states {untaught}/{len(items)}")
    return 0 if taught == len(items) and untaught == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
