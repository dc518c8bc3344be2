"""RTMP ingest: handshake, chunk stream, AMF0 commands, FLV tags for the segmenter."""
