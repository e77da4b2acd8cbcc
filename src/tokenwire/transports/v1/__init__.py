"""The HTTP dialects people already use (OpenAI, Anthropic), served by the one core."""
