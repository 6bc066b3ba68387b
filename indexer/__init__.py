"""Archive to index: discovery, decoding workers, embedding, SQL catalog and Faiss index."""
