"""tratree: weak-to-strong generalization of LLM agents with trajectory trees."""

__version__ = "0.1.0"
