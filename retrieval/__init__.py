"""Retrieval (FAISS trajectory index, embedders): see the RA-DT issue."""
