"""The tiny text-classification pipeline as a LitServe API, with LitServe's batching on.

Runs in LitServe's own venv (``~/.cache/mlbridge/peers/litserve``), started by
``benchmarks.transformers`` pinned to the server core::

    python litserve_api.py MODEL_DIR PORT [MAX_BATCH_SIZE BATCH_TIMEOUT_S [FAST_QUEUE]]

A request is ``{"inputs": "<text>"}``; the reply ``{"output": [{"label", "score"}]}``
is the pipeline's own answer for that text, as mlbridge's ``pipeline`` resource
returns it. One torch thread; listens on 127.0.0.1 only.
"""

import sys

import litserve as ls
import torch
from transformers import pipeline


class TextClassificationAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kw: object) -> None:
        super().__init__(**kw)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self.pipe = pipeline("text-classification", model=self.model_dir, device="cpu")

    def decode_request(self, request: dict) -> str:
        return request["inputs"]

    def batch(self, inputs: list) -> list:
        return list(inputs)

    def predict(self, texts: "str | list[str]") -> list:
        with torch.inference_mode():
            if isinstance(texts, str):  # batching off: one text, one answer
                return self.pipe(texts)
            return self.pipe(texts, batch_size=len(texts))

    def unbatch(self, outputs: list) -> list:
        return [[o] for o in outputs]

    def encode_response(self, output: list) -> dict:
        return {"output": output}


def main() -> None:
    model_dir, port = sys.argv[1], int(sys.argv[2])
    max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    fast_queue = len(sys.argv) > 5 and sys.argv[5] == "1"
    api = TextClassificationAPI(model_dir, max_batch_size=max_batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=fast_queue,
                          disable_openapi_url=True)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
