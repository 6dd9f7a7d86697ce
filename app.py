"""MRAD Gradio app (placeholder until the app issue lands): shows what is configured."""
import gradio as gr

with gr.Blocks(title="MRAD") as demo:
    gr.Markdown("# MRAD zero-shot anomaly detection\nThe interactive app is being built; use `mrad predict` meanwhile.")

if __name__ == "__main__":
    demo.launch()
