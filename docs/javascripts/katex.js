// Render the maths that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \] in
// .arithmatex elements, with the KaTeX vendored under docs/assets/katex (no network needed),
// and the $ ... $ / $$ ... $$ of the notebooks' markdown cells (mkdocs-jupyter pages).
// document$ is mkdocs-material's page observable (it also fires on instant navigation).
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  }
  for (const el of body.querySelectorAll(".jp-MarkdownCell .jp-RenderedMarkdown")) {
    renderMathInElement(el, {
      delimiters: [
        { left: "$$", right: "$$", display: true },
        { left: "$", right: "$", display: false },
      ],
      ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code"],
      throwOnError: false,
    });
  }
});
