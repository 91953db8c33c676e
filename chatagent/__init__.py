"""Chat agent: durable chat sessions, one Virtual Object per session holding its conversation."""
