"""The service layer: what the routes call. Functions take a SQLAlchemy session and plain arguments,
return models, and raise `ServiceError` subclasses that the app turns into `{"detail": ...}` responses."""
