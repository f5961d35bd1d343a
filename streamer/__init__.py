"""callmon streamer."""
