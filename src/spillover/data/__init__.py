"""Loaders for chat datasets and EM question files, and chat-template tokenization."""

from spillover.data.chat import ChatFormatError, Conversation, Message, load_chat, write_chat
from spillover.data.questions import Question, QuestionFormatError, load_questions, write_questions
from spillover.data.tokenize import EncodedChat, encode_chat, prompt_text, render_chat

__all__ = [
    "ChatFormatError",
    "Conversation",
    "EncodedChat",
    "Message",
    "Question",
    "QuestionFormatError",
    "encode_chat",
    "load_chat",
    "load_questions",
    "prompt_text",
    "render_chat",
    "write_chat",
    "write_questions",
]
