// Render the maths that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \] in
// .arithmatex elements, with the KaTeX vendored under docs/assets/katex (no network needed).
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
});
