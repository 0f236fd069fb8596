"""The ``langchain`` bridge: LangChain chains, agents, tools, memory, prompts and models."""

from .bridge import LangChainBridge

__all__ = ["LangChainBridge"]
