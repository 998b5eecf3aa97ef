"""darts-service: the FastAPI server, its SQL models, schemas and event ingestion."""
