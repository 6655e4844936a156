"""The TCP text protocol: pure sessions and the socket server."""
