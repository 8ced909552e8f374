from embedserve.cli import app

app()
