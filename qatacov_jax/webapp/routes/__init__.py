"""The web app's routes, one `APIRouter` per area (`app.create_app` includes them)."""
