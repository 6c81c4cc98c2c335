"""The ERA pipeline: data -> embeddings -> align -> adapt -> evaluate -> card -> Hub."""
