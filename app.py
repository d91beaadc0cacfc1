"""REFORM workbench: entry point. Routes to the pages and shows, on every page, what the tool is working on.

    streamlit run app.py        (binds to localhost: see .streamlit/config.toml)

Models and data come from the Home page's switches, starting from the environment (see pages/_settings.py).
"""
import faulthandler
import signal

from pages._routes import app_frame

# `kill -USR1 <server pid>` prints every thread's Python stack to the server's stderr: how a hung model load or
# job is diagnosed without stopping the server (the browser tests send it when a page never becomes ready).
faulthandler.register(signal.SIGUSR1, all_threads=True)
app_frame().run()
