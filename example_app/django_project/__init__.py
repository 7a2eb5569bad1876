"""Django demo project: the same pages and media as the Flask app, served with FileResponse."""
