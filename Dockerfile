# syntax=docker/dockerfile:1
# Multi-stage: build with dev dependencies, run compiled JavaScript with production dependencies only, as non-root.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY plugins ./plugins
COPY routes ./routes
COPY examples ./examples
COPY bench ./bench
COPY test ./test
RUN npx tsc -p . && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
# V8 flags of the gateway process: src/node-flags.ts says why
ENV NODE_ENV=production PORT=8080 HOST=0.0.0.0 NODE_OPTIONS="--max-semi-space-size=8"
WORKDIR /app
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --from=build --chown=node:node /app/package.json ./package.json
COPY --chown=node:node openapi ./openapi
USER node
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/src/server.js"]
