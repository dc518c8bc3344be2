FROM python:3.11-slim
WORKDIR /app
# Node brings anvil (the local chain `up --payments` runs) and solc-js, pinned in contracts/.
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
COPY contracts/package.json contracts/package-lock.json ./contracts/
RUN npm ci --prefix contracts --no-audit --no-fund --ignore-scripts
COPY contracts ./contracts
COPY pyproject.toml README.md ./
COPY streamgw ./streamgw
COPY web ./web
RUN pip install --no-cache-dir -e .
EXPOSE 1935 9935
ENTRYPOINT ["streamgw"]
CMD ["up", "--rtmp-addr", "0.0.0.0:1935", "--http-addr", "0.0.0.0:9935"]
