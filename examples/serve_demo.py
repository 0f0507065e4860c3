"""Start ``edgeslm serve``, talk to it with the official ollama and openai clients, show ``edgeslm ps``
and what its web page (/ui/) shows.

.venv/bin/python examples/serve_demo.py [MODEL]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import ollama
import openai


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", "--port", str(port), "--preload", model])
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        question = [{"role": "user", "content": "Write a haiku about the sea."}]
        print(f"ollama client, streaming from {url}:")
        for part in ollama.Client(host=url).chat(
            model=model, messages=question, stream=True, options={"temperature": 0, "num_predict": 48}
        ):
            print(part.message.content, end="", flush=True)
        print("\n\nopenai client:")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback")
        reply = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=48)
        print(reply.choices[0].message.content, f"\n({reply.usage})\n")
        subprocess.run([sys.executable, "-m", "edgeslm", "ps", "--server", url], check=True)
        # the web page reads the same store: the variants measured above, with their numbers
        families = httpx.get(url + "/edgeslm/v1/models", timeout=30).json()["families"]
        measured = sum(
            1 for f in families for v in f["variants"] if v["result"] and v["result"]["kld_mean"] is not None
        )
        print(
            f"\nweb page: {url}/ui/ shows {len(families)} model families, {measured} variants measured against "
            "a reference"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
