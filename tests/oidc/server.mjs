// A real OpenID Provider (npm oidc-provider) for flask-apiguard's tests: client-credentials
// JWT access tokens (RS256, with a kid) for the resource https://api.example.
//
//   PORT=4455 KEYS_FILE=keys.json node server.mjs
//
// KEYS_FILE holds a private JWKS; the first key signs (restart with another file to rotate).
// GET /test/jwks-hits answers how many times /jwks was fetched from this process.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 4455);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(process.env.KEYS_FILE, 'utf8'));

const provider = new Provider(issuer, {
  jwks,
  clients: [{
    client_id: 'api-client',
    client_secret: 'a-long-client-secret-for-tests-only',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.example',
      getResourceServerInfo: () => ({
        scope: 'read:notes write:notes',
        audience: 'https://api.example',
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

let jwksHits = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/jwks-hits') {
    ctx.body = { hits: jwksHits };
    return;
  }
  if (ctx.path === '/jwks') jwksHits += 1;
  await next();
});

provider.listen(port, '127.0.0.1', () => console.log('listening', issuer));
