// Compile the contracts with the pinned solc-js and print streamgw's artifact (ABI and bytecode) as JSON.
// Usage: node contracts/compile.mjs > streamgw/payments/contracts.json   (scripts/compile_contracts.sh)
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const solc = require("solc");
const sources = ["RoundsManager.sol", "TicketBroker.sol"];
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "none", appendCBOR: false },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};
const input = {
  language: "Solidity",
  sources: Object.fromEntries(sources.map((name) => [name, { content: readFileSync(join(here, name), "utf8") }])),
  settings,
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const problems = output.errors || [];
for (const e of problems) console.error(e.formattedMessage); // warnings too: keep the sources warning-free
if (problems.some((e) => e.severity === "error")) process.exit(1);
const contracts = {};
for (const name of sources) {
  const contract = name.replace(/\.sol$/, "");
  const compiled = output.contracts[name][contract];
  contracts[contract] = { abi: compiled.abi, bytecode: "0x" + compiled.evm.bytecode.object };
}
const sorted = (value) =>
  Array.isArray(value) ? value.map(sorted)
  : value && typeof value === "object" ? Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]))
  : value;
process.stdout.write(JSON.stringify(sorted({ compiler: "solc-js " + solc.version(), settings, contracts }), null, 1) + "\n");
