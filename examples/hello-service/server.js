// The Orcastrate quickstart's sample service: no dependencies, just Node's http module.
//
//   GET /healthz  -> 200 "ok" (the agent's [health] http check)
//   GET /         -> which version runs, and one value of the decrypted config
//
// The deploy agent decrypts config/encrypted_<env>.json into config/decrypted_<env>.json
// (mode 0600) in each release before starting it. The env is APP_ENV (default
// "production"): the agent does not pass its own ORCASTRATE_* variables to the app.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

const VERSION = 1;
const port = Number(process.env.PORT || 3000);
const env = process.env.APP_ENV || 'production';
const configFile = path.join(__dirname, 'config', `decrypted_${env}.json`);

let config;
try {
  config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
} catch (err) {
  console.error(`hello-service: cannot read ${configFile}: ${err.message}`);
  process.exit(1);
}
const greeting = String(config.greeting || '(no greeting in the config)');
const release = process.env.ORCA_RELEASE || 'not deployed by orcastrate';
console.log(`hello-service version ${VERSION} (release ${release}), greeting: ${greeting}`);

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok\n');
  } else if (req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`hello-service version ${VERSION} (release ${release}): ${greeting}\n`);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }
});
server.listen(port, () => console.log(`hello-service listening on port ${port}`));

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
