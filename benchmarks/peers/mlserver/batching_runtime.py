"""MLServer's Hugging Face runtime with adaptive batching that batches BERT too.

Runs inside MLServer's own venv (not mlbridge's). MLServer 1.7's HF runtime
drops the pipeline to one item at a time when the tokenizer's pad id is
falsy (``if not pad_token_id``), which is every BERT tokenizer (pad id 0):
its adaptive batcher then still gathers requests, but the pipeline runs
them one by one. Giving the pipeline its batch size back is the fix.
"""

from mlserver_huggingface import HuggingFaceRuntime


class BatchingHuggingFaceRuntime(HuggingFaceRuntime):
    async def load(self) -> bool:
        loaded = await super().load()
        self._model._batch_size = max(1, self.settings.max_batch_size)
        return loaded
