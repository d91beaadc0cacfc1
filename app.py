"""REFORM workbench: entry point. Routes to the pages and shows, on every page, what the tool is working on.

    streamlit run app.py        (binds to localhost: see .streamlit/config.toml)

Models and data come from the Home page's switches, starting from the environment (see pages/_settings.py).
"""
from pages._routes import app_frame

app_frame().run()
