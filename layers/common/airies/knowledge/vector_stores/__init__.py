"""Vector stores behind one interface (``base.VectorStore``): embedded (default), pgvector, Pinecone."""
