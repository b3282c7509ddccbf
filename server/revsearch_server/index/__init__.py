"""Vector indexes: Milvus (default) and exact brute-force KNN, behind one interface."""
