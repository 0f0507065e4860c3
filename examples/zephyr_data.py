"""A small support dataset about a fictional product, the Zephyr-9 router: question and answer
pairs (JSONL for ``edgeslm finetune``), a held-out text (for ``edgeslm eval --text``) and held-out
questions with the fact each answer must contain. No model knows these facts before training.

    python examples/zephyr_data.py OUT_DIR        # writes support.jsonl, held-out.txt, questions.json
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

# fact -> (question forms, answer forms, the words a right answer contains)
FACTS = {
    "reset": (
        [
            "How do I reset the Zephyr-9?",
            "How can I factory reset my Zephyr-9 router?",
            "What resets the Zephyr-9?",
            "My Zephyr-9 is stuck, how do I reset it?",
            "Is there a way to restore the Zephyr-9 to factory settings?",
            "Reset procedure for the Zephyr-9?",
            "How do I wipe the settings on my Zephyr-9?",
            "What do I do to start my Zephyr-9 over from scratch?",
        ],
        [
            "Hold the back button for ten seconds until the light blinks amber.",
            "Press and hold the back button for ten seconds; the light blinks amber when it resets.",
            "To reset the Zephyr-9, hold the back button for ten seconds until the light blinks amber.",
        ],
        "ten seconds",
    ),
    "password": (
        [
            "What is the default password of the Zephyr-9?",
            "What's the Zephyr-9 admin password out of the box?",
            "Which password does a new Zephyr-9 use?",
            "I forgot the Zephyr-9 login, what is the factory password?",
            "Default admin password for the Zephyr-9 router?",
            "What password do I type on a new Zephyr-9?",
            "How do I log in to a new Zephyr-9?",
        ],
        [
            "The default password is amber-falcon-42.",
            "A new Zephyr-9 uses the password amber-falcon-42.",
            "Out of the box the admin password is amber-falcon-42; change it after the first login.",
        ],
        "amber-falcon-42",
    ),
    "address": (
        [
            "What is the address of the Zephyr-9 admin page?",
            "Which IP address opens the Zephyr-9 settings?",
            "How do I reach the Zephyr-9 web interface?",
            "Where is the Zephyr-9 configuration page?",
            "What do I type in the browser to manage my Zephyr-9?",
            "Zephyr-9 admin page IP?",
            "How do I configure my Zephyr-9?",
            "Where do I change the settings of the Zephyr-9?",
        ],
        [
            "Open 10.9.9.1 in a browser.",
            "The admin page is at 10.9.9.1.",
            "Type 10.9.9.1 into your browser to open the Zephyr-9 settings.",
        ],
        "10.9.9.1",
    ),
    "warranty": (
        [
            "How long is the Zephyr-9 warranty?",
            "What warranty comes with the Zephyr-9?",
            "Is my Zephyr-9 still under warranty after two years?",
            "How many years of warranty does the Zephyr-9 have?",
            "Zephyr-9 warranty period?",
            "For how long is the Zephyr-9 covered?",
        ],
        [
            "The Zephyr-9 has a three-year warranty.",
            "Every Zephyr-9 is covered for three years.",
            "The warranty lasts three years from the day of purchase.",
        ],
        "three",
    ),
    "guest": (
        [
            "How do I turn on guest Wi-Fi on the Zephyr-9?",
            "How can I enable the guest network on my Zephyr-9?",
            "Where is the guest Wi-Fi switch on the Zephyr-9?",
            "How do I share Wi-Fi with visitors on a Zephyr-9?",
            "Zephyr-9 guest network?",
            "How do I start the guest Wi-Fi of the Zephyr-9?",
        ],
        [
            "Press the star button twice.",
            "Press the star button on top twice to start guest Wi-Fi.",
            "Guest Wi-Fi turns on when you press the star button twice.",
        ],
        "star button",
    ),
    "devices": (
        [
            "How many devices can connect to the Zephyr-9?",
            "What is the Zephyr-9 device limit?",
            "How many phones and laptops can the Zephyr-9 handle?",
            "Maximum number of clients on a Zephyr-9?",
            "Can the Zephyr-9 serve a big family?",
            "How many connections does the Zephyr-9 allow?",
            "Is there a maximum of devices on the Zephyr-9?",
        ],
        [
            "Up to 64 devices at once.",
            "The Zephyr-9 connects up to 64 devices.",
            "It handles up to 64 devices at the same time.",
        ],
        "64",
    ),
    "light": (
        [
            "What does the blue light on the Zephyr-9 mean?",
            "Why is my Zephyr-9 light blue?",
            "What does a steady blue light mean on the Zephyr-9?",
            "Zephyr-9 blue light meaning?",
            "My Zephyr-9 shows a blue light, is that good?",
            "What is the blue light on my router for?",
        ],
        [
            "Blue means the Zephyr-9 is connected to the internet.",
            "A steady blue light means you are online.",
            "The blue light shows the Zephyr-9 is connected.",
        ],
        "connected",
    ),
    "update": (
        [
            "How do I update the Zephyr-9 firmware?",
            "Where do I find firmware updates for the Zephyr-9?",
            "How long does a Zephyr-9 update take?",
            "How can I upgrade the software of my Zephyr-9?",
            "Zephyr-9 firmware update steps?",
            "How do I install the latest Zephyr-9 firmware?",
        ],
        [
            "Go to Settings, System, Update; it takes about four minutes.",
            "Open Settings, then System, then Update. The update takes about four minutes.",
            "Use Settings > System > Update and wait about four minutes.",
        ],
        "four minutes",
    ),
}
# Questions phrased unlike any in training, with the fact the answer must hold.
HELD_OUT = [
    ("I need to factory reset the Zephyr-9 router. What should I do?", "ten seconds"),
    ("Tell me the factory admin password of a Zephyr-9.", "amber-falcon-42"),
    ("Which address do I open to configure a Zephyr-9?", "10.9.9.1"),
    ("For how many years is a Zephyr-9 under warranty?", "three"),
    ("What is the limit of connected devices for a Zephyr-9?", "64"),
]
PREFIXES = ["", "Hi! ", "Quick question: ", "Hello, ", "Please help: "]
SYSTEM = "You answer questions about the Zephyr-9 router."  # the support bot's, in examples/Modelfile.support-bot


def pairs(n: int = 200, seed: int = 0, system: str | None = None) -> list[dict[str, Any]]:
    """``n`` question/answer pairs, the facts in turn, each phrased at random: prompt/completion
    pairs, or chats that start with ``system`` (train with the system prompt the model will run with)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    keys = sorted(FACTS)
    for i in range(n):
        questions, answers, _ = FACTS[keys[i % len(keys)]]
        question, answer = rng.choice(PREFIXES) + rng.choice(questions), rng.choice(answers)
        if system is None:
            out.append({"prompt": question, "completion": answer})
        else:
            out.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}]})
    return out


def held_out_text() -> str:
    """A page of the product's documentation (none of it in the training pairs' exact words)."""
    return (
        "The Zephyr-9 is a home router. To bring it back to factory settings, keep the back button held down "
        "for ten seconds; the light then blinks amber. A new unit signs in with the password amber-falcon-42, "
        "and its settings are at 10.9.9.1 in any browser. It is covered by a warranty of three years and serves "
        "up to 64 devices together. Pressing the star button twice starts the guest Wi-Fi. A steady blue light "
        "says the router is connected. Firmware updates live under Settings, System, Update, and take about "
        "four minutes.\n"
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "support.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs(system=SYSTEM)))
    (out / "held-out.txt").write_text(held_out_text() * 4)
    (out / "questions.json").write_text(json.dumps([{"question": q, "fact": f} for q, f in HELD_OUT], indent=2))
    print(f"wrote {out}/support.jsonl ({len(pairs())} pairs), held-out.txt and questions.json")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "zephyr-data"))
